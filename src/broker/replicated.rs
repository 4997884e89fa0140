//! Definition changes of a cluster: exchanges, bindings, users, vhosts, permissions, policies
//! and runtime parameters (shovels) are one replicated state. A node that is asked for such a change over AMQP or HTTP proposes it to
//! the cluster (through [`crate::broker::queue::replica::QuorumHost`]) and answers once it is
//! committed; every node applies it here, in the log's order, so every node ends with the same
//! definitions whatever the order requests arrived in. The answer is the apply's: a declare
//! that conflicts with one committed just before it gets the same error on every node.

use super::audit::Actor;
use super::error::{AmqpError, Scope};
use super::exchange::{Binding, Destination};
use super::parameters::{Parameter, ParameterChange, ParameterState};
use super::policy::{PolicyChange, PolicyKind, PolicyState, StoredPolicy};
use super::store::{table_from_hex, table_to_hex};
use super::Broker;
use crate::auth::AccessChange;
use crate::types::{FieldTable, ShortStr};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// One change every node applies.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum DefinitionChange {
    DeclareExchange {
        vhost: String,
        name: String,
        kind: String,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        /// The argument table in AMQP's encoding, as hex (every field type survives).
        arguments: String,
        user: String,
    },
    DeleteExchange {
        vhost: String,
        name: String,
        if_unused: bool,
        user: String,
    },
    /// A binding made (`bind`) or removed.
    Binding {
        bind: bool,
        vhost: String,
        source: String,
        destination: String,
        to_exchange: bool,
        routing_key: String,
        arguments: String,
        user: String,
    },
    /// A change to users, vhosts or permissions, as the definitions journal writes it (JSON:
    /// its types use serde's tagged and optional forms, which compact binary encodings lack).
    Access {
        change: String,
        user: String,
    },
    /// A policy or operator policy set or cleared (JSON, as `Access`).
    Policy {
        change: String,
        user: String,
    },
    /// A runtime parameter (a shovel) set or cleared (JSON, as `Access`: its value is JSON).
    Parameter {
        change: String,
        user: String,
    },
    /// A classic queue of the cluster: it lives on node `home`, which makes it (the others
    /// make its face), under placement `id` (which its end names). A declare of a name the
    /// cluster has already is a declare again, checked as one.
    PlaceQueue {
        vhost: String,
        name: String,
        home: String,
        id: u64,
        durable: bool,
        auto_delete: bool,
        arguments: String,
        user: String,
    },
    /// Placement `id` of queue `name` ended: its home deleted it, and its faces go.
    UnplaceQueue {
        vhost: String,
        name: String,
        id: u64,
    },
}

impl DefinitionChange {
    /// The vhost this change deletes, if it deletes one (its quorum queues go with it).
    pub fn deleted_vhost(&self) -> Option<String> {
        let DefinitionChange::Access { change, .. } = self else { return None };
        match serde_json::from_str(change) {
            Ok(AccessChange::DeleteVhost { name }) => Some(name),
            _ => None,
        }
    }

    pub fn policy(change: &PolicyChange, user: &str) -> Self {
        DefinitionChange::Policy { change: serde_json::to_string(change).unwrap_or_default(), user: user.into() }
    }

    pub fn parameter(change: &ParameterChange, user: &str) -> Self {
        DefinitionChange::Parameter { change: serde_json::to_string(change).unwrap_or_default(), user: user.into() }
    }

    pub fn access(change: &AccessChange, user: &str) -> Self {
        DefinitionChange::Access { change: serde_json::to_string(change).unwrap_or_default(), user: user.into() }
    }

    pub fn declare_exchange(
        vhost: &str,
        name: &str,
        kind: &str,
        flags: (bool, bool, bool),
        arguments: &FieldTable,
        user: &str,
    ) -> Self {
        let (durable, auto_delete, internal) = flags;
        DefinitionChange::DeclareExchange {
            vhost: vhost.into(),
            name: name.into(),
            kind: kind.into(),
            durable,
            auto_delete,
            internal,
            arguments: table_to_hex(arguments),
            user: user.into(),
        }
    }

    /// The placement `id` of classic queue `name` on node `home`.
    #[allow(clippy::too_many_arguments)]
    pub fn place_queue(
        vhost: &str,
        name: &str,
        home: &str,
        id: u64,
        durable: bool,
        auto_delete: bool,
        arguments: &FieldTable,
        user: &str,
    ) -> Self {
        DefinitionChange::PlaceQueue {
            vhost: vhost.into(),
            name: name.into(),
            home: home.into(),
            id,
            durable,
            auto_delete,
            arguments: table_to_hex(arguments),
            user: user.into(),
        }
    }

    /// queue.bind / exchange.bind (`bind`) or their unbinds.
    pub fn binding(bind: bool, vhost: &str, source: &str, binding: &Binding, user: &str) -> Self {
        let (destination, to_exchange) = match &binding.destination {
            Destination::Queue(q) => (q.to_string(), false),
            Destination::Exchange(e) => (e.to_string(), true),
        };
        DefinitionChange::Binding {
            bind,
            vhost: vhost.to_string(),
            source: source.to_string(),
            destination,
            to_exchange,
            routing_key: binding.routing_key.to_string(),
            arguments: table_to_hex(&binding.arguments),
            user: user.to_string(),
        }
    }
}

/// Why a change was refused, as it travels back to the node that proposed it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Refusal {
    pub code: u16,
    pub text: String,
    pub connection: bool,
}

impl From<AmqpError> for Refusal {
    fn from(e: AmqpError) -> Self {
        Refusal { code: e.code, text: e.text, connection: e.scope == Scope::Connection }
    }
}

impl From<Refusal> for AmqpError {
    fn from(r: Refusal) -> Self {
        let mut e = AmqpError::new(r.code, r.text);
        e.scope = if r.connection { Scope::Connection } else { Scope::Channel };
        e
    }
}

fn actor(user: &str) -> Actor {
    Actor { user: Arc::from(user), source: None, via: "cluster", connection: Actor::NO_CONNECTION }
}

/// A change carried as JSON (`Access`, `Policy`, `Parameter`), read back.
fn parsed<T: serde::de::DeserializeOwned>(json: &str, what: &str) -> Result<T, Refusal> {
    serde_json::from_str(json).map_err(|e| Refusal {
        code: crate::types::constants::INTERNAL_ERROR,
        text: format!("malformed {what} change: {e}"),
        connection: false,
    })
}

/// A refusal of a change by the broker, with its text.
fn refusal(code: u16, e: impl std::fmt::Display) -> Refusal {
    Refusal { code, text: e.to_string(), connection: false }
}

fn table(hex: &str) -> FieldTable {
    table_from_hex(hex).unwrap_or_default()
}

/// A fresh placement id (never 0).
pub fn placement_id() -> u64 {
    rand::random::<u64>().max(1)
}

impl Broker {
    /// On a cluster node, proposes the placement of classic queue `d.name`, new in `vhost`, on
    /// this node, so that the name is one queue in the cluster (this node makes it as the
    /// placement is applied here; the others make its face). Its arguments are checked first,
    /// with RabbitMQ's texts. Returns the proposal's ticket, or None where the queue is not
    /// placed: on a single node, and for a stream (a node's own).
    pub fn place_new_queue(
        &self,
        vhost: &str,
        d: &super::vhost::QueueDeclaration,
        user: &str,
    ) -> Result<Option<u64>, AmqpError> {
        let Some(host) = self.quorum_host() else { return Ok(None) };
        let args = super::arguments::QueueArguments::parse(&d.arguments, &d.name, vhost)?;
        if args.stream {
            return Ok(None);
        }
        let (durable, auto_delete) = (d.durable, d.auto_delete);
        let place = DefinitionChange::place_queue(
            vhost,
            &d.name,
            &host.node_name(),
            placement_id(),
            durable,
            auto_delete,
            &d.arguments,
            user,
        );
        Ok(Some(host.place_here(place)))
    }

    /// On a cluster node: places `q`, this node's queue made without a placement (an MQTT
    /// session's), now rather than at the reconciler's next look, so that what is proposed
    /// after it (its bindings) finds it on every node. None on a single node, or for a queue
    /// placed already or never placed (exclusive, a stream, another node's).
    pub fn place_local_queue(&self, vhost: &str, q: &super::queue::Queue, user: &str) -> Option<u64> {
        let host = self.quorum_host()?;
        if q.placement() != 0 || q.replica.is_some() || q.stream.is_some() || q.options.exclusive_owner.is_some() {
            return None;
        }
        let o = &q.options;
        let place = DefinitionChange::place_queue(
            vhost,
            &q.name,
            &host.node_name(),
            placement_id(),
            o.durable,
            o.auto_delete,
            &o.arguments,
            user,
        );
        Some(host.place_here(place))
    }

    /// Applies a committed definition change on this node (every node does, in log order).
    pub fn apply_definition(&self, change: &DefinitionChange) -> Result<(), Refusal> {
        let vhost = |name: &str| {
            self.vhost(name).ok_or_else(|| Refusal {
                code: crate::types::constants::NOT_FOUND,
                text: format!("no vhost '{name}'"),
                connection: false,
            })
        };
        match change {
            DefinitionChange::DeclareExchange {
                vhost: v,
                name,
                kind,
                durable,
                auto_delete,
                internal,
                arguments,
                user,
            } => {
                vhost(v)?.declare_exchange(
                    &ShortStr::from(name.as_str()),
                    kind,
                    false,
                    *durable,
                    *auto_delete,
                    *internal,
                    &table(arguments),
                    &actor(user),
                )?;
            }
            DefinitionChange::DeleteExchange { vhost: v, name, if_unused, user } => {
                vhost(v)?.delete_exchange(&ShortStr::from(name.as_str()), *if_unused, &actor(user))?;
            }
            DefinitionChange::Binding {
                bind,
                vhost: v,
                source,
                destination,
                to_exchange,
                routing_key,
                arguments,
                user,
            } => {
                let dest = ShortStr::from(destination.as_str());
                let binding = Binding {
                    destination: if *to_exchange { Destination::Exchange(dest) } else { Destination::Queue(dest) },
                    routing_key: ShortStr::from(routing_key.as_str()),
                    arguments: table(arguments),
                };
                let source = ShortStr::from(source.as_str());
                if *bind {
                    vhost(v)?.bind(&source, binding, &actor(user))?;
                } else {
                    vhost(v)?.unbind(&source, &binding, &actor(user))?;
                }
            }
            DefinitionChange::Access { change, user } => {
                let change: AccessChange = parsed(change, "access")?;
                let done = self.change_access(change, &actor(user));
                done.map_err(|e| refusal(crate::types::constants::PRECONDITION_FAILED, e))?;
            }
            DefinitionChange::Policy { change, user } => {
                let change: PolicyChange = parsed(change, "policy")?;
                let done = self.change_policy(change, &actor(user));
                done.map_err(|e| refusal(crate::types::constants::NOT_FOUND, e))?;
            }
            DefinitionChange::Parameter { change, user } => {
                let change: ParameterChange = parsed(change, "parameter")?;
                let done = self.change_parameter(change, &actor(user));
                done.map_err(|e| refusal(crate::types::constants::PRECONDITION_FAILED, e))?;
            }
            DefinitionChange::PlaceQueue { vhost: v, name, home, id, durable, auto_delete, arguments, user } => {
                let Some(host) = self.quorum_host().cloned() else { return Ok(()) };
                let d = super::vhost::QueueDeclaration {
                    name: ShortStr::from(name.as_str()),
                    passive: false,
                    durable: *durable,
                    exclusive: false,
                    auto_delete: *auto_delete,
                    arguments: table(arguments),
                };
                let me = host.node_name();
                let face = || host.face(v, name, home);
                vhost(v)?.place(&d, home, *id, &me, face, &actor(user))?;
            }
            DefinitionChange::UnplaceQueue { vhost: v, name, id } => {
                if let Some(v) = self.vhost(v) {
                    v.unplace(name, *id, &actor(INSTALLER));
                }
            }
        }
        Ok(())
    }
}

/// The replicated definitions as a snapshot of the cluster's state carries them: users,
/// vhosts and permissions, every exchange a client declared, and every binding whose
/// destination is an exchange or a replicated queue. A node that installs a snapshot makes
/// its broker's replicated definitions exactly these, then applies the log after it, so every
/// node ends with the same definitions whether it applied each change or caught up from a
/// snapshot (or restarted from one with a journal that was ahead of it).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct ReplicatedDefinitions {
    /// [`crate::auth::AccessLists`] as JSON (its serde forms are not bincode's).
    pub access: String,
    /// `DeclareExchange` changes, by vhost and name.
    pub exchanges: Vec<DefinitionChange>,
    /// `Binding` changes (all `bind`), in each vhost by source.
    pub bindings: Vec<DefinitionChange>,
    /// Every policy and operator policy, as JSON ([`StoredPolicy`] list).
    pub policies: String,
    /// Every runtime parameter (shovels), as JSON ([`Parameter`] list).
    pub parameters: String,
    /// `PlaceQueue` changes: the cluster's classic queues and their homes.
    pub placements: Vec<DefinitionChange>,
}

/// The user a change made by a snapshot's installation is recorded as.
const INSTALLER: &str = "cluster";

/// An exchange every vhost has of itself (not replicated: each node makes them).
fn built_in(name: &str) -> bool {
    name.is_empty() || name.starts_with("amq.")
}

impl Broker {
    /// The replicated definitions as they are now (see [`ReplicatedDefinitions`]).
    pub fn replicated_definitions(&self) -> ReplicatedDefinitions {
        let access = crate::auth::AccessLists::from(self.access());
        let me = self.quorum_host().map(|h| h.node_name()).unwrap_or_default();
        let mut exchanges = Vec::new();
        let mut bindings = Vec::new();
        let mut placements = Vec::new();
        let mut vhosts: Vec<_> = self.vhosts.read().values().cloned().collect();
        vhosts.sort_by(|a, b| a.name.cmp(&b.name));
        for v in vhosts {
            for e in v.exchanges().iter().filter(|e| !built_in(e.name.as_str())) {
                exchanges.push(DefinitionChange::declare_exchange(
                    &v.name,
                    e.name.as_str(),
                    e.kind.as_str(),
                    (e.durable, e.auto_delete, e.internal),
                    &e.arguments,
                    INSTALLER,
                ));
            }
            for q in v.placed_queues() {
                let home = q.home().unwrap_or(&me);
                let o = &q.options;
                let (durable, auto_delete) = (o.durable, o.auto_delete);
                let place = DefinitionChange::place_queue;
                placements.push(place(
                    &v.name,
                    &q.name,
                    home,
                    q.placement(),
                    durable,
                    auto_delete,
                    &o.arguments,
                    INSTALLER,
                ));
            }
            for (source, b) in v.bindings() {
                let replicated = match &b.destination {
                    Destination::Exchange(_) => true,
                    Destination::Queue(q) => v.replicated_queue(q.as_str()).is_some(),
                };
                if replicated {
                    bindings.push(DefinitionChange::binding(true, &v.name, source.as_str(), &b, INSTALLER));
                }
            }
        }
        let policies: Vec<StoredPolicy> = [PolicyKind::Policy, PolicyKind::OperatorPolicy]
            .into_iter()
            .flat_map(|kind| self.policies(kind, None).into_iter().map(move |policy| StoredPolicy { kind, policy }))
            .collect();
        ReplicatedDefinitions {
            access: serde_json::to_string(&access).unwrap_or_default(),
            exchanges,
            bindings,
            policies: serde_json::to_string(&policies).unwrap_or_default(),
            parameters: serde_json::to_string(&self.parameters(None, None)).unwrap_or_default(),
            placements,
        }
    }

    /// Makes the replicated definitions those of `target`: what is not in it goes, what is
    /// missing or different is made as it says. Definitions that are not replicated (classic
    /// queues and their bindings) stay, unless their vhost goes.
    pub fn install_replicated_definitions(&self, target: &ReplicatedDefinitions) {
        let by = actor(INSTALLER);
        let now = self.replicated_definitions();
        // Users, vhosts, permissions: the differences, as changes.
        let want: crate::auth::AccessLists = match serde_json::from_str(&target.access) {
            Ok(a) => a,
            Err(e) => {
                tracing::error!("cluster snapshot: unreadable users and permissions: {e}");
                return;
            }
        };
        let have: crate::auth::AccessLists = serde_json::from_str(&now.access).unwrap_or_default();
        let mut changes = Vec::new();
        for u in have.users.iter().filter(|u| !want.users.iter().any(|w| w.name == u.name)) {
            changes.push(AccessChange::DeleteUser { name: u.name.clone() });
        }
        for p in
            have.permissions.iter().filter(|p| !want.permissions.iter().any(|w| w.user == p.user && w.vhost == p.vhost))
        {
            changes.push(AccessChange::ClearPermissions { user: p.user.clone(), vhost: p.vhost.clone() });
        }
        for p in &have.topic_permissions {
            if !want
                .topic_permissions
                .iter()
                .any(|w| w.user == p.user && w.vhost == p.vhost && w.exchange == p.exchange)
            {
                changes.push(AccessChange::ClearTopicPermissions {
                    user: p.user.clone(),
                    vhost: p.vhost.clone(),
                    exchange: Some(p.exchange.clone()),
                });
            }
        }
        for v in have.vhosts.iter().filter(|v| !want.vhosts.iter().any(|w| w.name == v.name)) {
            changes.push(AccessChange::DeleteVhost { name: v.name.clone() });
        }
        for v in want.vhosts.iter().filter(|v| !have.vhosts.contains(v)) {
            changes.push(AccessChange::PutVhost { vhost: v.clone() });
        }
        for u in want.users.iter().filter(|u| !have.users.contains(u)) {
            changes.push(AccessChange::PutUser { user: u.clone() });
        }
        for p in want.permissions.iter().filter(|p| !have.permissions.contains(p)) {
            changes.push(AccessChange::SetPermissions { permission: p.clone() });
        }
        for p in want.topic_permissions.iter().filter(|p| !have.topic_permissions.contains(p)) {
            changes.push(AccessChange::SetTopicPermissions { permission: p.clone() });
        }
        for c in changes {
            if let Err(e) = self.change_access(c, &by) {
                tracing::warn!("cluster snapshot: {e}");
            }
        }
        // Classic queues' placements that ended, then those that are new (before bindings:
        // a face that goes takes its bindings, and a new one is bound below).
        let now = self.replicated_definitions();
        for p in now.placements.iter().filter(|p| !target.placements.contains(p)) {
            if let DefinitionChange::PlaceQueue { vhost, name, id, .. } = p {
                if let Some(v) = self.vhost(vhost) {
                    v.unplace(name, *id, &by);
                }
            }
        }
        for p in target.placements.iter().filter(|p| !now.placements.contains(p)) {
            self.apply_quietly(p);
        }
        // Bindings that go, exchanges that go or change, exchanges that come, bindings that
        // come (each step looks again: a vhost or exchange that went took its bindings).
        let now = self.replicated_definitions();
        for b in now.bindings.iter().filter(|b| !target.bindings.contains(b)) {
            self.apply_quietly(&unbind(b));
        }
        for e in &now.exchanges {
            if target.exchanges.contains(e) {
                continue;
            }
            if let DefinitionChange::DeclareExchange { vhost, name, .. } = e {
                self.apply_quietly(&DefinitionChange::DeleteExchange {
                    vhost: vhost.clone(),
                    name: name.clone(),
                    if_unused: false,
                    user: INSTALLER.into(),
                });
            }
        }
        for e in target.exchanges.iter().filter(|e| !now.exchanges.contains(e)) {
            self.apply_quietly(e);
        }
        let now = self.replicated_definitions();
        for b in target.bindings.iter().filter(|b| !now.bindings.contains(b)) {
            self.apply_quietly(b);
        }
        // Policies: those not in the target cleared, the others set as it has them.
        let want: Vec<StoredPolicy> = serde_json::from_str(&target.policies).unwrap_or_default();
        let want = PolicyState::from_list(&want);
        let have: Vec<StoredPolicy> = serde_json::from_str(&now.policies).unwrap_or_default();
        for p in &have {
            if want.get(p.kind, &p.policy.vhost, &p.policy.name).is_none() {
                let (vhost, name) = (p.policy.vhost.clone(), p.policy.name.clone());
                let _ = self.change_policy(PolicyChange::Clear { kind: p.kind, vhost, name }, &by);
            }
        }
        for p in want.to_list() {
            if let Err(e) = self.change_policy(PolicyChange::Set { kind: p.kind, policy: p.policy }, &by) {
                tracing::warn!("cluster snapshot: {e}");
            }
        }
        // Parameters: the same (a parameter set as it was is no change, and its shovel runs on).
        let want: Vec<Parameter> = serde_json::from_str(&target.parameters).unwrap_or_default();
        let want = ParameterState::from_list(&want);
        for p in self.parameters(None, None) {
            if want.get(&p.component, &p.vhost, &p.name).is_none() {
                let (component, vhost, name) = (p.component, p.vhost, p.name);
                let _ = self.change_parameter(ParameterChange::Clear { component, vhost, name }, &by);
            }
        }
        for parameter in want.to_list() {
            if let Err(e) = self.change_parameter(ParameterChange::Set { parameter }, &by) {
                tracing::warn!("cluster snapshot: {e}");
            }
        }
    }

    fn apply_quietly(&self, change: &DefinitionChange) {
        if let Err(r) = self.apply_definition(change) {
            tracing::warn!("cluster snapshot: {}", r.text);
        }
    }
}

/// The unbind of a `bind` change.
fn unbind(b: &DefinitionChange) -> DefinitionChange {
    let mut u = b.clone();
    if let DefinitionChange::Binding { bind, .. } = &mut u {
        *bind = false;
    }
    u
}
