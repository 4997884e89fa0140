//! Definition changes of a cluster: exchanges, bindings, users, vhosts and permissions are one
//! replicated state. A node that is asked for such a change over AMQP or HTTP proposes it to
//! the cluster (through [`crate::broker::queue::replica::QuorumHost`]) and answers once it is
//! committed; every node applies it here, in the log's order, so every node ends with the same
//! definitions whatever the order requests arrived in. The answer is the apply's: a declare
//! that conflicts with one committed just before it gets the same error on every node.

use super::audit::Actor;
use super::error::{AmqpError, Scope};
use super::exchange::{Binding, Destination};
use super::store::{table_from_hex, table_to_hex};
use super::Broker;
use crate::auth::AccessChange;
use crate::protocol::{FieldTable, ShortStr};
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
}

impl DefinitionChange {
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

fn table(hex: &str) -> FieldTable {
    table_from_hex(hex).unwrap_or_default()
}

impl Broker {
    /// Applies a committed definition change on this node (every node does, in log order).
    pub fn apply_definition(&self, change: &DefinitionChange) -> Result<(), Refusal> {
        let vhost = |name: &str| {
            self.vhost(name).ok_or_else(|| Refusal {
                code: crate::protocol::constants::NOT_FOUND,
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
                let change: AccessChange = serde_json::from_str(change).map_err(|e| Refusal {
                    code: crate::protocol::constants::INTERNAL_ERROR,
                    text: format!("malformed access change: {e}"),
                    connection: false,
                })?;
                self.change_access(change, &actor(user)).map_err(|e| Refusal {
                    code: crate::protocol::constants::PRECONDITION_FAILED,
                    text: e.to_string(),
                    connection: false,
                })?;
            }
        }
        Ok(())
    }
}
