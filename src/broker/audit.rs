//! Audit events: who did what, from where, to which object, and whether it was allowed.
//!
//! The core and the protocol layers describe an event ([`AuditEvent`]) and hand it to
//! [`Audit::emit`], which puts it on a queue and returns: no I/O, no lock beyond the
//! queue's, nothing that waits, so an event may be emitted under the broker's own locks and
//! costs the message path nothing (no event is per message). A writer outside the core
//! (`crate::audit`) takes events off the queue, appends them to the audit log and publishes
//! them to `amq.rabbitmq.event`.
//!
//! No event is dropped. The queue has no hard bound; instead, when more than
//! [`BACKLOG`] events wait (the disk under the log has stalled), connections stop reading
//! from their sockets until the writer catches up (see [`Audit::backlogged`]), so the
//! clients making events wait rather than the broker's memory growing.

use crate::auth::{AccessChange, AccessState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

/// Events waiting for the writer beyond which connections pause reading.
pub const BACKLOG: u64 = 65_536;

/// Who made a change or asked for something.
#[derive(Debug, Clone)]
pub struct Actor {
    pub user: Arc<str>,
    /// The peer's address, when the request came over the network.
    pub source: Option<Arc<str>>,
    /// "amqp", "http", or "broker" for what the broker does by itself (a queue's x-expires,
    /// an exclusive queue whose connection closed).
    pub via: &'static str,
    /// The AMQP connection's id, for exclusive-queue ownership; [`Actor::NO_CONNECTION`] else.
    pub connection: u64,
}

impl Actor {
    /// No AMQP connection: ids start at 1.
    pub const NO_CONNECTION: u64 = 0;

    /// The broker acting on its own, as RabbitMQ's `rmq-internal`.
    pub fn broker() -> Actor {
        Actor { user: "rmq-internal".into(), source: None, via: "broker", connection: Self::NO_CONNECTION }
    }

    /// A management API user.
    pub fn http(user: &str, source: Option<String>) -> Actor {
        Actor { user: user.into(), source: source.map(Into::into), via: "http", connection: Self::NO_CONNECTION }
    }
}

/// A value of an event's object, kept typed so the log and the event exchange's headers
/// show booleans and numbers as such.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    Bool(bool),
    Int(i64),
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::Str(s.to_string())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::Str(s)
    }
}
impl From<bool> for Value {
    fn from(b: bool) -> Value {
        Value::Bool(b)
    }
}
impl From<u64> for Value {
    fn from(n: u64) -> Value {
        Value::Int(n.min(i64::MAX as u64) as i64)
    }
}

/// A field table as text for an event: `{key: value, ...}` with RabbitMQ's renderings.
pub fn table_text(t: &crate::types::FieldTable) -> String {
    let parts: Vec<String> =
        t.iter().map(|(k, v)| format!("{}: {}", k.as_str(), super::error::erlang_value(v))).collect();
    format!("{{{}}}", parts.join(", "))
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Ok,
    /// Refused, with the reason the client was given.
    Refused(String),
}

#[derive(Debug, Clone)]
pub struct AuditEvent {
    /// Milliseconds since the epoch.
    pub time_ms: u64,
    /// The event's name, which is also its routing key on `amq.rabbitmq.event`: RabbitMQ's
    /// names (`queue.created`, `user.authentication.failure`, ...) where it has one.
    pub event: &'static str,
    pub user: Arc<str>,
    pub source: Option<Arc<str>>,
    pub via: &'static str,
    pub vhost: Option<String>,
    /// What the event is about: its name and properties, in order.
    pub object: Vec<(&'static str, Value)>,
    pub outcome: Outcome,
}

impl AuditEvent {
    pub fn new(event: &'static str, by: &Actor, vhost: Option<&str>) -> AuditEvent {
        AuditEvent {
            time_ms: super::clock::now_ms(),
            event,
            user: by.user.clone(),
            source: by.source.clone(),
            via: by.via,
            vhost: vhost.map(str::to_string),
            object: Vec::new(),
            outcome: Outcome::Ok,
        }
    }

    pub fn with(mut self, key: &'static str, value: impl Into<Value>) -> AuditEvent {
        self.object.push((key, value.into()));
        self
    }

    pub fn refused(mut self, reason: impl Into<String>) -> AuditEvent {
        self.outcome = Outcome::Refused(reason.into());
        self
    }
}

/// The emitting end of the audit queue, shared by everything that makes events.
#[derive(Debug)]
pub struct Audit {
    tx: Option<mpsc::Sender<AuditEvent>>,
    pending: Arc<AtomicU64>,
    /// Woken by the writer when the backlog falls below [`BACKLOG`].
    drained: Arc<tokio::sync::Notify>,
    backlogged: Arc<AtomicBool>,
}

/// The writer's end: events in order, and the counter it decrements as it writes them.
pub struct AuditReceiver {
    pub rx: mpsc::Receiver<AuditEvent>,
    pending: Arc<AtomicU64>,
    drained: Arc<tokio::sync::Notify>,
    backlogged: Arc<AtomicBool>,
}

impl AuditReceiver {
    /// The writer has written `n` events.
    pub fn written(&self, n: u64) {
        let left = self.pending.fetch_sub(n, Ordering::AcqRel).saturating_sub(n);
        if left < BACKLOG / 2 && self.backlogged.swap(false, Ordering::AcqRel) {
            tracing::info!("audit log caught up: connections read again");
            self.drained.notify_waiters();
        }
    }
}

impl Audit {
    /// An audit queue and its receiving end.
    pub fn channel() -> (Audit, AuditReceiver) {
        let (tx, rx) = mpsc::channel();
        let pending = Arc::new(AtomicU64::new(0));
        let drained = Arc::new(tokio::sync::Notify::new());
        let backlogged = Arc::new(AtomicBool::new(false));
        let audit =
            Audit { tx: Some(tx), pending: pending.clone(), drained: drained.clone(), backlogged: backlogged.clone() };
        (audit, AuditReceiver { rx, pending, drained, backlogged })
    }

    /// Events go nowhere (a broker without an audit log, in tests).
    pub fn off() -> Audit {
        Audit {
            tx: None,
            pending: Arc::new(AtomicU64::new(0)),
            drained: Arc::new(tokio::sync::Notify::new()),
            backlogged: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn is_on(&self) -> bool {
        self.tx.is_some()
    }

    pub fn emit(&self, event: AuditEvent) {
        let Some(tx) = &self.tx else { return };
        let n = self.pending.fetch_add(1, Ordering::AcqRel) + 1;
        if tx.send(event).is_err() {
            // The writer is gone (the broker is stopping).
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        if n > BACKLOG && !self.backlogged.swap(true, Ordering::AcqRel) {
            tracing::warn!("audit log {n} events behind: connections pause reading until it catches up");
        }
    }

    /// More events wait than the writer should be behind: a connection about to read
    /// waits on [`Audit::caught_up`] first.
    pub fn backlogged(&self) -> bool {
        self.backlogged.load(Ordering::Relaxed)
    }

    /// Returns once the backlog is below half of [`BACKLOG`] (or at once if it is).
    pub async fn caught_up(&self) {
        loop {
            let notified = self.drained.notified();
            if !self.backlogged() {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backlog_sets_and_clears() {
        let (audit, rx) = Audit::channel();
        let by = Actor::broker();
        for _ in 0..BACKLOG + 1 {
            audit.emit(AuditEvent::new("queue.created", &by, Some("/")));
        }
        assert!(audit.backlogged());
        let mut n = 0;
        while rx.rx.try_recv().is_ok() {
            n += 1;
        }
        assert_eq!(n, BACKLOG + 1);
        rx.written(n);
        assert!(!audit.backlogged());
        Audit::off().emit(AuditEvent::new("x", &by, None));
    }
}

/// The audit events of an access change, from the state before it: RabbitMQ's event names
/// (`user.created`, `user.password.changed`, `permission.created`, ...). Password hashes are
/// never in an event.
pub(super) fn access_events(before: &AccessState, change: &AccessChange, by: &Actor) -> Vec<AuditEvent> {
    use AuditEvent as E;
    let limits = |l: &std::collections::BTreeMap<String, i64>| {
        l.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join(", ")
    };
    match change {
        AccessChange::PutUser { user } => match before.user(&user.name) {
            None => vec![E::new("user.created", by, None)
                .with("name", user.name.as_str())
                .with("tags", user.tags.join(","))],
            Some(old) => {
                let mut out = Vec::new();
                if old.password_hash != user.password_hash {
                    out.push(E::new("user.password.changed", by, None).with("name", user.name.as_str()));
                }
                if old.tags != user.tags {
                    out.push(
                        E::new("user.tags.set", by, None)
                            .with("name", user.name.as_str())
                            .with("tags", user.tags.join(",")),
                    );
                }
                if old.limits != user.limits {
                    out.push(
                        E::new("user.limits.set", by, None)
                            .with("name", user.name.as_str())
                            .with("limits", limits(&user.limits)),
                    );
                }
                out
            }
        },
        AccessChange::DeleteUser { name } => vec![E::new("user.deleted", by, None).with("name", name.as_str())],
        AccessChange::PutVhost { vhost } => match before.vhost(&vhost.name) {
            None => vec![E::new("vhost.created", by, Some(&vhost.name)).with("name", vhost.name.as_str())],
            Some(old) if old.limits != vhost.limits => vec![E::new("vhost.limits.set", by, Some(&vhost.name))
                .with("name", vhost.name.as_str())
                .with("limits", limits(&vhost.limits))],
            Some(_) => Vec::new(),
        },
        AccessChange::DeleteVhost { name } => vec![E::new("vhost.deleted", by, Some(name)).with("name", name.as_str())],
        AccessChange::SetPermissions { permission: p } => vec![E::new("permission.created", by, Some(&p.vhost))
            .with("user", p.user.as_str())
            .with("configure", p.configure.as_str())
            .with("write", p.write.as_str())
            .with("read", p.read.as_str())],
        AccessChange::ClearPermissions { user, vhost } => {
            vec![E::new("permission.deleted", by, Some(vhost)).with("user", user.as_str())]
        }
        AccessChange::SetTopicPermissions { permission: p } => {
            vec![E::new("topic.permission.created", by, Some(&p.vhost))
                .with("user", p.user.as_str())
                .with("exchange", p.exchange.as_str())
                .with("write", p.write.as_str())
                .with("read", p.read.as_str())]
        }
        AccessChange::ClearTopicPermissions { user, vhost, exchange } => {
            vec![E::new("topic.permission.deleted", by, Some(vhost))
                .with("user", user.as_str())
                .with("exchange", exchange.clone().unwrap_or_default())]
        }
    }
}
