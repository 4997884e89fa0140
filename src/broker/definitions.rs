//! Durable definitions as a state machine: a vhost's saved exchanges, queues and bindings,
//! changed one [`Change`] at a time. Storage appends each change to its journal and replays
//! the journal through [`DefinitionsState::apply`] at start; a snapshot is this state written
//! whole. The same commands are what a cluster would replicate. No I/O here.
//!
//! Deletes cascade as the broker's own do: deleting a queue removes the bindings to it, and
//! deleting an exchange removes the bindings from it and to it. A queue's bindings are found
//! through an index by destination, so a delete costs what that queue had, not a scan.

use super::parameters::{Parameter, ParameterChange, ParameterState};
use super::policy::{PolicyChange, PolicyState, StoredPolicy};
use crate::auth::{AccessChange, AccessState};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Durable topology of one vhost, as saved on disk. Argument tables are kept in AMQP's own
/// encoding (hex) so every field type survives.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Definitions {
    pub exchanges: Vec<ExchangeDef>,
    pub queues: Vec<QueueDef>,
    pub bindings: Vec<BindingDef>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExchangeDef {
    pub name: String,
    pub kind: String,
    pub internal: bool,
    pub arguments: String,
    /// The user who declared it (RabbitMQ's `user_who_performed_action`); absent in
    /// journals written before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct QueueDef {
    pub name: String,
    pub arguments: String,
    /// The queue log's id in the data directory.
    pub log: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BindingDef {
    pub source: String,
    pub destination: String,
    /// "queue" or "exchange".
    pub destination_kind: String,
    pub routing_key: String,
    pub arguments: String,
}

/// One change to the saved definitions of a vhost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Change {
    DeclareExchange {
        vhost: String,
        exchange: ExchangeDef,
    },
    DeleteExchange {
        vhost: String,
        name: String,
    },
    DeclareQueue {
        vhost: String,
        queue: QueueDef,
    },
    DeleteQueue {
        vhost: String,
        name: String,
    },
    Bind {
        vhost: String,
        binding: BindingDef,
    },
    Unbind {
        vhost: String,
        binding: BindingDef,
    },
    /// Users, vhosts and permissions (see `crate::auth`). Deleting a vhost drops its
    /// definitions too.
    Access {
        change: AccessChange,
    },
    /// A policy or operator policy set or cleared (see `crate::broker::policy`).
    Policy {
        change: PolicyChange,
    },
    /// A runtime parameter (a shovel) set or cleared (see `crate::broker::parameters`).
    Parameter {
        change: ParameterChange,
    },
}

/// A binding as the index keys it: (source, routing key, arguments), under its destination.
type BindingKey = (String, String, String);
/// A destination: ("queue" or "exchange", name).
type DestKey = (String, String);

/// The saved definitions of one vhost.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VhostDefinitions {
    exchanges: BTreeMap<String, ExchangeDef>,
    queues: BTreeMap<String, QueueDef>,
    /// Bindings by destination.
    bindings: HashMap<DestKey, BTreeSet<BindingKey>>,
}

impl VhostDefinitions {
    /// As a [`Definitions`] list, sorted (exchanges, queues, then bindings by source).
    pub fn to_definitions(&self) -> Definitions {
        let mut bindings: Vec<BindingDef> = self
            .bindings
            .iter()
            .flat_map(|((kind, dest), keys)| {
                keys.iter().map(move |(source, key, args)| BindingDef {
                    source: source.clone(),
                    destination: dest.clone(),
                    destination_kind: kind.clone(),
                    routing_key: key.clone(),
                    arguments: args.clone(),
                })
            })
            .collect();
        bindings.sort_by(|a, b| {
            (&a.source, &a.destination_kind, &a.destination, &a.routing_key, &a.arguments).cmp(&(
                &b.source,
                &b.destination_kind,
                &b.destination,
                &b.routing_key,
                &b.arguments,
            ))
        });
        Definitions {
            exchanges: self.exchanges.values().cloned().collect(),
            queues: self.queues.values().cloned().collect(),
            bindings,
        }
    }

    fn from_definitions(d: &Definitions) -> Self {
        let mut v = VhostDefinitions::default();
        for e in &d.exchanges {
            v.exchanges.insert(e.name.clone(), e.clone());
        }
        for q in &d.queues {
            v.queues.insert(q.name.clone(), q.clone());
        }
        for b in &d.bindings {
            v.bind(b);
        }
        v
    }

    fn bind(&mut self, b: &BindingDef) {
        self.bindings.entry((b.destination_kind.clone(), b.destination.clone())).or_default().insert((
            b.source.clone(),
            b.routing_key.clone(),
            b.arguments.clone(),
        ));
    }

    fn unbind(&mut self, b: &BindingDef) {
        let dest = (b.destination_kind.clone(), b.destination.clone());
        if let Some(keys) = self.bindings.get_mut(&dest) {
            keys.remove(&(b.source.clone(), b.routing_key.clone(), b.arguments.clone()));
            if keys.is_empty() {
                self.bindings.remove(&dest);
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.exchanges.is_empty() && self.queues.is_empty() && self.bindings.is_empty()
    }
}

/// The saved definitions of every vhost.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DefinitionsState {
    vhosts: BTreeMap<String, VhostDefinitions>,
    /// None until the first access change (a data directory from before users were kept).
    access: Option<AccessState>,
    policies: PolicyState,
    parameters: ParameterState,
}

/// A snapshot as written to disk: every vhost's definitions as lists.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Snapshot {
    pub vhosts: BTreeMap<String, Definitions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<AccessState>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<StoredPolicy>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parameters: Vec<Parameter>,
}

impl DefinitionsState {
    pub fn from_snapshot(s: &Snapshot) -> Self {
        let vhosts = s.vhosts.iter().map(|(n, d)| (n.clone(), VhostDefinitions::from_definitions(d))).collect();
        DefinitionsState {
            vhosts,
            access: s.access.clone(),
            policies: PolicyState::from_list(&s.policies),
            parameters: ParameterState::from_list(&s.parameters),
        }
    }

    pub fn to_snapshot(&self) -> Snapshot {
        Snapshot {
            vhosts: self.vhosts.iter().map(|(n, v)| (n.clone(), v.to_definitions())).collect(),
            access: self.access.clone(),
            policies: self.policies.to_list(),
            parameters: self.parameters.to_list(),
        }
    }

    /// The runtime parameters of every vhost.
    pub fn parameters(&self) -> &ParameterState {
        &self.parameters
    }

    /// The policies and operator policies of every vhost.
    pub fn policies(&self) -> &PolicyState {
        &self.policies
    }

    /// Users, vhosts and permissions, if any change to them was ever made.
    pub fn access(&self) -> Option<&AccessState> {
        self.access.as_ref()
    }

    /// The saved definitions of `vhost` (empty if it has none).
    pub fn vhost(&self, vhost: &str) -> Definitions {
        self.vhosts.get(vhost).map(VhostDefinitions::to_definitions).unwrap_or_default()
    }

    /// Drops what is held of `vhost` (once it was handed over).
    pub fn forget_vhost(&mut self, vhost: &str) {
        self.vhosts.remove(vhost);
    }

    /// Replaces what `vhost` has saved with `defs` (reading an older format).
    pub fn set_vhost(&mut self, vhost: &str, defs: &Definitions) {
        self.vhosts.insert(vhost.to_string(), VhostDefinitions::from_definitions(defs));
    }

    pub fn apply(&mut self, change: &Change) {
        let vhost = match change {
            Change::Access { change } => {
                if let AccessChange::DeleteVhost { name } = change {
                    self.vhosts.remove(name);
                    self.policies.forget_vhost(name);
                    self.parameters.forget_vhost(name);
                }
                self.access.get_or_insert_with(AccessState::default).apply(change);
                return;
            }
            Change::Policy { change } => {
                self.policies.apply(change);
                return;
            }
            Change::Parameter { change } => {
                self.parameters.apply(change);
                return;
            }
            Change::DeclareExchange { vhost, .. }
            | Change::DeleteExchange { vhost, .. }
            | Change::DeclareQueue { vhost, .. }
            | Change::DeleteQueue { vhost, .. }
            | Change::Bind { vhost, .. }
            | Change::Unbind { vhost, .. } => vhost,
        };
        let v = self.vhosts.entry(vhost.clone()).or_default();
        match change {
            Change::DeclareExchange { exchange, .. } => {
                v.exchanges.insert(exchange.name.clone(), exchange.clone());
            }
            Change::DeleteExchange { name, .. } => {
                v.exchanges.remove(name);
                v.bindings.remove(&("exchange".to_string(), name.clone()));
                // Bindings from it: a scan, as exchanges are deleted far less often than
                // queues and have no index by source here.
                v.bindings.retain(|_, keys| {
                    keys.retain(|(source, _, _)| source != name);
                    !keys.is_empty()
                });
            }
            Change::DeclareQueue { queue, .. } => {
                v.queues.insert(queue.name.clone(), queue.clone());
            }
            Change::DeleteQueue { name, .. } => {
                v.queues.remove(name);
                v.bindings.remove(&("queue".to_string(), name.clone()));
            }
            Change::Bind { binding, .. } => v.bind(binding),
            Change::Unbind { binding, .. } => v.unbind(binding),
            Change::Access { .. } | Change::Policy { .. } | Change::Parameter { .. } => {}
        }
        if v.is_empty() {
            self.vhosts.remove(vhost);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn binding(source: &str, kind: &str, dest: &str, key: &str) -> BindingDef {
        BindingDef {
            source: source.into(),
            destination: dest.into(),
            destination_kind: kind.into(),
            routing_key: key.into(),
            arguments: String::new(),
        }
    }

    /// The obvious model: lists, deletes by scanning them.
    #[derive(Default)]
    struct Model {
        exchanges: BTreeMap<String, ExchangeDef>,
        queues: BTreeMap<String, QueueDef>,
        bindings: Vec<BindingDef>,
    }

    impl Model {
        fn apply(&mut self, c: &Change) {
            match c {
                Change::DeclareExchange { exchange, .. } => {
                    self.exchanges.insert(exchange.name.clone(), exchange.clone());
                }
                Change::DeleteExchange { name, .. } => {
                    self.exchanges.remove(name);
                    self.bindings
                        .retain(|b| &b.source != name && !(b.destination_kind == "exchange" && &b.destination == name));
                }
                Change::DeclareQueue { queue, .. } => {
                    self.queues.insert(queue.name.clone(), queue.clone());
                }
                Change::DeleteQueue { name, .. } => {
                    self.queues.remove(name);
                    self.bindings.retain(|b| !(b.destination_kind == "queue" && &b.destination == name));
                }
                Change::Bind { binding, .. } => {
                    if !self.bindings.contains(binding) {
                        self.bindings.push(binding.clone());
                    }
                }
                Change::Unbind { binding, .. } => self.bindings.retain(|b| b != binding),
                Change::Access { .. } | Change::Policy { .. } | Change::Parameter { .. } => {}
            }
        }

        fn definitions(&self) -> Definitions {
            let mut bindings = self.bindings.clone();
            bindings.sort_by(|a, b| {
                (&a.source, &a.destination_kind, &a.destination, &a.routing_key).cmp(&(
                    &b.source,
                    &b.destination_kind,
                    &b.destination,
                    &b.routing_key,
                ))
            });
            Definitions {
                exchanges: self.exchanges.values().cloned().collect(),
                queues: self.queues.values().cloned().collect(),
                bindings,
            }
        }
    }

    fn random_change(rng: &mut StdRng) -> Change {
        let vhost = "/".to_string();
        let name = |rng: &mut StdRng, p: &str| format!("{p}{}", rng.gen_range(0..6));
        match rng.gen_range(0..6) {
            0 => Change::DeclareExchange {
                vhost,
                exchange: ExchangeDef {
                    name: name(rng, "x"),
                    kind: "topic".into(),
                    internal: rng.gen_bool(0.2),
                    arguments: String::new(),
                    user: None,
                },
            },
            1 => Change::DeleteExchange { vhost, name: name(rng, "x") },
            2 => Change::DeclareQueue {
                vhost,
                queue: QueueDef { name: name(rng, "q"), arguments: String::new(), log: name(rng, "log") },
            },
            3 => Change::DeleteQueue { vhost, name: name(rng, "q") },
            kind => {
                let (dk, dest) =
                    if rng.gen_bool(0.7) { ("queue", name(rng, "q")) } else { ("exchange", name(rng, "x")) };
                let b = binding(&name(rng, "x"), dk, &dest, &name(rng, "k"));
                if kind == 4 {
                    Change::Bind { vhost, binding: b }
                } else {
                    Change::Unbind { vhost, binding: b }
                }
            }
        }
    }

    #[test]
    fn random_changes_agree_with_the_list_model_and_survive_a_snapshot() {
        for seed in 0..300u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut state = DefinitionsState::default();
            let mut model = Model::default();
            for step in 0..200 {
                let c = random_change(&mut rng);
                state.apply(&c);
                model.apply(&c);
                assert_eq!(state.vhost("/"), model.definitions(), "seed {seed} step {step} after {c:?}");
                if step % 50 == 49 {
                    // A snapshot read back is the same state.
                    let json = serde_json::to_vec(&state.to_snapshot()).unwrap();
                    let back = DefinitionsState::from_snapshot(&serde_json::from_slice(&json).unwrap());
                    assert_eq!(back, state, "seed {seed} step {step}");
                }
            }
        }
    }

    #[test]
    fn vhosts_are_kept_apart_and_an_emptied_one_disappears() {
        let mut s = DefinitionsState::default();
        let q = |v: &str, n: &str| Change::DeclareQueue {
            vhost: v.into(),
            queue: QueueDef { name: n.into(), arguments: String::new(), log: format!("{v}{n}") },
        };
        s.apply(&q("a", "q1"));
        s.apply(&q("b", "q1"));
        s.apply(&Change::Bind { vhost: "a".into(), binding: binding("amq.direct", "queue", "q1", "k") });
        assert_eq!(s.vhost("a").bindings.len(), 1);
        assert!(s.vhost("b").bindings.is_empty());
        s.apply(&Change::DeleteQueue { vhost: "a".into(), name: "q1".into() });
        assert_eq!(s.vhost("a"), Definitions::default());
        assert_eq!(s.to_snapshot().vhosts.keys().collect::<Vec<_>>(), ["b"]);
    }
}
