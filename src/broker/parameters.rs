//! Runtime parameters, as RabbitMQ keeps them: values of a component (`shovel`) named in a
//! vhost, set and cleared one [`ParameterChange`] at a time (what the definitions journal
//! records). The component that runs them (the shovel layer) validates a value before it is
//! set and follows the changes through [`Broker::parameter_changes`]; it reports each
//! running parameter's state back here ([`RunState`]) for the management API. No I/O.
//!
//! Vhost limits, which RabbitMQ also keeps as a component (`vhost-limits`), stay with the
//! vhosts (see `crate::auth`); the API lists them as parameters the way RabbitMQ does.

use super::audit::{Actor, AuditEvent};
use super::definitions::Change;
use super::Broker;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// One parameter: its value, and the user who set it (a shovel's local ends act as them).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Parameter {
    pub component: String,
    pub vhost: String,
    pub name: String,
    pub value: Value,
    #[serde(default)]
    pub user: String,
}

impl Parameter {
    /// As RabbitMQ's API and definitions show a parameter.
    pub fn to_json(&self) -> Value {
        serde_json::json!({ "vhost": self.vhost, "component": self.component, "name": self.name, "value": self.value })
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ParameterChange {
    Set { parameter: Parameter },
    Clear { component: String, vhost: String, name: String },
}

/// Every parameter, by (component, vhost, name).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ParameterState {
    items: BTreeMap<(String, String, String), Parameter>,
}

impl ParameterState {
    pub fn apply(&mut self, change: &ParameterChange) {
        match change {
            ParameterChange::Set { parameter: p } => {
                self.items.insert((p.component.clone(), p.vhost.clone(), p.name.clone()), p.clone());
            }
            ParameterChange::Clear { component, vhost, name } => {
                self.items.remove(&(component.clone(), vhost.clone(), name.clone()));
            }
        }
    }

    pub fn forget_vhost(&mut self, vhost: &str) {
        self.items.retain(|(_, v, _), _| v != vhost);
    }

    pub fn get(&self, component: &str, vhost: &str, name: &str) -> Option<&Parameter> {
        self.items.get(&(component.to_string(), vhost.to_string(), name.to_string()))
    }

    /// The parameters of a component (or all), of a vhost (or all), in order.
    pub fn list<'a>(
        &'a self,
        component: Option<&'a str>,
        vhost: Option<&'a str>,
    ) -> impl Iterator<Item = &'a Parameter> {
        self.items
            .values()
            .filter(move |p| component.is_none_or(|c| c == p.component) && vhost.is_none_or(|v| v == p.vhost))
    }

    pub fn to_list(&self) -> Vec<Parameter> {
        self.items.values().cloned().collect()
    }

    pub fn from_list(list: &[Parameter]) -> Self {
        let mut s = ParameterState::default();
        for p in list {
            s.apply(&ParameterChange::Set { parameter: p.clone() });
        }
        s
    }
}

/// RabbitMQ's text for a value its validation refused (policies and shovels alike):
/// `Validation failed`, a blank line, then each problem on its own line.
pub fn validation_failed(errors: Vec<String>) -> String {
    let mut text = String::from("Validation failed\n\n");
    for e in errors {
        text.push_str(&e);
        text.push('\n');
    }
    text
}

/// Why a parameter change was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParameterError {
    #[error("no vhost '{0}'")]
    NoSuchVhost(String),
}

/// How a running parameter (a shovel) is doing, as its runner reports it: RabbitMQ's
/// `starting`, `running` or `terminated` (with the reason), since when, and what the runner
/// adds (`src_uri`, `dest_queue`, ...).
#[derive(Clone, Debug, PartialEq)]
pub struct RunState {
    pub state: &'static str,
    pub reason: Option<String>,
    pub since_ms: u64,
    pub info: Vec<(&'static str, Value)>,
}

impl RunState {
    /// The state as RabbitMQ's shovel management plugin shows a running shovel's.
    pub fn to_json(&self, node: &str, vhost: &str, name: &str) -> Value {
        let mut v = serde_json::json!({
            "node": node,
            "timestamp": timestamp(self.since_ms),
            "name": name,
            "vhost": vhost,
            "type": "dynamic",
            "state": self.state,
        });
        for (k, val) in &self.info {
            v[*k] = val.clone();
        }
        if let Some(r) = &self.reason {
            v["reason"] = serde_json::json!(r);
        }
        v
    }
}

/// `YYYY-MM-DD HH:MM:SS` (UTC), as RabbitMQ's shovel status prints its timestamps.
fn timestamp(ms: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp((ms / 1000) as i64).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let f = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    t.format(&f).unwrap_or_default()
}

impl Broker {
    /// The runners' states other members of the cluster report (as [`RunState::to_json`]).
    pub fn remote_run_states(&self) -> Vec<Value> {
        self.remote_run_states.lock().clone()
    }

    pub fn set_remote_run_states(&self, states: Vec<Value>) {
        *self.remote_run_states.lock() = states;
    }

    /// The parameters of a component (or all) in a vhost (or all).
    pub fn parameters(&self, component: Option<&str>, vhost: Option<&str>) -> Vec<Parameter> {
        self.parameters.read().list(component, vhost).cloned().collect()
    }

    pub fn parameter(&self, component: &str, vhost: &str, name: &str) -> Option<Parameter> {
        self.parameters.read().get(component, vhost, name).cloned()
    }

    /// Sets or clears a parameter (validated by its component first): recorded durably
    /// (returns the ticket to wait for; 0 when nothing changed), then announced to the
    /// component's runner through [`Broker::parameter_changes`].
    pub fn change_parameter(&self, change: ParameterChange, by: &Actor) -> Result<u64, ParameterError> {
        if let ParameterChange::Set { parameter } = &change {
            if self.vhost(&parameter.vhost).is_none() {
                return Err(ParameterError::NoSuchVhost(parameter.vhost.clone()));
            }
        }
        let ticket = {
            let mut state = self.parameters.write();
            let same = match &change {
                ParameterChange::Set { parameter: p } => state.get(&p.component, &p.vhost, &p.name) == Some(p),
                ParameterChange::Clear { component, vhost, name } => state.get(component, vhost, name).is_none(),
            };
            if same {
                return Ok(0);
            }
            state.apply(&change);
            if self.audit.is_on() {
                self.audit.emit(parameter_event(&change, by));
            }
            self.storage.as_ref().map_or(0, |s| s.record(&Change::Parameter { change: change.clone() }))
        };
        self.parameter_generation.send_modify(|g| *g += 1);
        Ok(ticket)
    }

    /// A receiver that sees a new number after every parameter change (a runner reconciles
    /// what it runs with [`Broker::parameters`] then).
    /// Clears a parameter whose work is done (a shovel's `src-delete-after`), as the broker
    /// itself: on a cluster node through the cluster, so that every node forgets it.
    pub fn clear_finished_parameter(&self, component: &str, vhost: &str, name: &str) {
        let clear = ParameterChange::Clear { component: component.into(), vhost: vhost.into(), name: name.into() };
        let by = Actor::broker();
        match self.quorum_host() {
            Some(host) => {
                host.propose_definition(super::replicated::DefinitionChange::parameter(&clear, &by.user));
            }
            None => {
                let _ = self.change_parameter(clear, &by);
            }
        }
    }

    pub fn parameter_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.parameter_generation.subscribe()
    }

    pub(crate) fn install_parameters(&self, state: ParameterState) {
        *self.parameters.write() = state;
        self.parameter_generation.send_modify(|g| *g += 1);
    }

    pub(crate) fn forget_parameters(&self, vhost: &str) {
        self.parameters.write().forget_vhost(vhost);
        self.parameter_generation.send_modify(|g| *g += 1);
    }

    /// Asks the runner to start the parameter's work over (RabbitMQ's shovel restart).
    pub fn restart_parameter(&self, component: &str, vhost: &str, name: &str) {
        self.restarts.lock().push((component.to_string(), vhost.to_string(), name.to_string()));
        self.parameter_generation.send_modify(|g| *g += 1);
    }

    /// The restarts asked for since the last call, of one component: (vhost, name).
    pub fn take_restarts(&self, component: &str) -> Vec<(String, String)> {
        let mut all = self.restarts.lock();
        let (mine, rest): (Vec<_>, Vec<_>) = all.drain(..).partition(|(c, _, _)| c == component);
        *all = rest;
        mine.into_iter().map(|(_, v, n)| (v, n)).collect()
    }

    /// A runner's report of one parameter's state (None: it stopped running it).
    pub fn set_run_state(&self, component: &str, vhost: &str, name: &str, state: Option<RunState>) {
        let key = (component.to_string(), vhost.to_string(), name.to_string());
        let mut states = self.run_states.lock();
        match state {
            Some(s) => {
                states.insert(key, s);
            }
            None => {
                states.remove(&key);
            }
        }
    }

    /// The state of every running parameter of a component: (vhost, name, state).
    pub fn run_states(&self, component: &str) -> Vec<(String, String, RunState)> {
        self.run_states
            .lock()
            .iter()
            .filter(|((c, _, _), _)| c == component)
            .map(|((_, v, n), s)| (v.clone(), n.clone(), s.clone()))
            .collect()
    }

    /// A secret a runner inside this process logs in to the broker's own AMQP listener with,
    /// from loopback, as the user who set the parameter (see [`Broker::authenticate`]).
    pub fn internal_secret(&self) -> &str {
        &self.internal_secret
    }
}

/// RabbitMQ's `parameter.set` and `parameter.cleared` events.
fn parameter_event(change: &ParameterChange, by: &Actor) -> AuditEvent {
    match change {
        ParameterChange::Set { parameter: p } => AuditEvent::new("parameter.set", by, Some(&p.vhost))
            .with("component", p.component.as_str())
            .with("name", p.name.as_str()),
        ParameterChange::Clear { component, vhost, name } => AuditEvent::new("parameter.cleared", by, Some(vhost))
            .with("component", component.as_str())
            .with("name", name.as_str()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(c: &str, v: &str, n: &str, value: Value) -> Parameter {
        Parameter { component: c.into(), vhost: v.into(), name: n.into(), value, user: "u".into() }
    }

    #[test]
    fn set_clear_list_and_a_snapshot_read_back() {
        let mut s = ParameterState::default();
        s.apply(&ParameterChange::Set { parameter: p("shovel", "/", "a", serde_json::json!({"x": 1})) });
        s.apply(&ParameterChange::Set { parameter: p("shovel", "v", "b", serde_json::json!({})) });
        s.apply(&ParameterChange::Set { parameter: p("other", "/", "c", serde_json::json!(1)) });
        assert_eq!(s.list(Some("shovel"), None).count(), 2);
        assert_eq!(s.list(Some("shovel"), Some("/")).map(|p| p.name.as_str()).collect::<Vec<_>>(), ["a"]);
        s.apply(&ParameterChange::Clear { component: "shovel".into(), vhost: "/".into(), name: "a".into() });
        assert!(s.get("shovel", "/", "a").is_none());
        let back: Vec<Parameter> = serde_json::from_str(&serde_json::to_string(&s.to_list()).unwrap()).unwrap();
        assert_eq!(ParameterState::from_list(&back), s);
        s.forget_vhost("v");
        assert_eq!(s.list(None, None).count(), 1);
    }
}
