//! Dynamic shovels, as RabbitMQ's shovel plugin has them: a runtime parameter of component
//! `shovel` (set through `/api/parameters/shovel/{vhost}/{name}`, kept in the definitions
//! journal) names a source (a queue, or an exchange and routing key) and a destination (a
//! queue, or an exchange) on this broker or any other AMQP 0-9-1 broker, and a worker moves
//! messages from one to the other for as long as the parameter exists.
//!
//! - [`definition`]: the value checked as RabbitMQ checks it, and read into settings;
//! - [`uri`]: AMQP URIs (`amqp://` without a host is this broker);
//! - `worker`: the AMQP client (amqprs) of one shovel, its acks and reconnects;
//! - the supervisor here: starts a worker for each shovel parameter, stops it when the
//!   parameter goes or changes, and leaves the state reports to the workers.
//!
//! In a cluster, shovel parameters are the cluster's (set through any node, kept by every
//! node) and each shovel runs on one node, as RabbitMQ runs a dynamic shovel once in its
//! cluster: the Raft leader's. When another node comes to lead, its supervisor starts the
//! workers and the old leader's stop (an on-confirm shovel then resends what was in flight:
//! at least once, as after any reconnect). The other nodes show the runner's states through
//! the members' reports (see `cluster::reports`).
//!
//! A local end logs in to this broker's own AMQP listener from loopback as the user who set
//! the shovel up, with the process's internal secret (see `Broker::internal_secret`): it has
//! that user's permissions.

pub mod definition;
mod tls;
pub mod uri;
mod worker;

use crate::broker::parameters::Parameter;
use crate::broker::Broker;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The component name of shovels among runtime parameters.
pub const COMPONENT: &str = "shovel";

/// Starts the supervisor: from now on, every shovel parameter has a worker. `local` is this
/// broker's AMQP listener, for `amqp://` ends.
pub fn spawn(broker: Arc<Broker>, local: SocketAddr) -> tokio::task::JoinHandle<()> {
    tokio::spawn(supervise(broker, local))
}

struct Running {
    parameter: Parameter,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// How often a cluster node looks whether it should run the shovels (whether it leads).
const LEADERSHIP_CHECK: Duration = Duration::from_secs(1);
/// How long a worker told to stop because its node no longer leads has to end.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// Whether this node runs the shovels: a single node does; in a cluster, the leader.
fn runs_here(broker: &Broker) -> bool {
    broker.quorum_host().is_none_or(|h| h.leads())
}

async fn supervise(broker: Arc<Broker>, local: SocketAddr) {
    let mut changes = broker.parameter_changes();
    let mut running: HashMap<(String, String), Running> = HashMap::new();
    loop {
        let here = runs_here(&broker);
        let wanted: HashMap<(String, String), Parameter> = broker
            .parameters(Some(COMPONENT), None)
            .into_iter()
            .filter(|_| here)
            .map(|p| ((p.vhost.clone(), p.name.clone()), p))
            .collect();
        // Gone, changed or asked to restart: stopped (started again below if still wanted).
        for key in broker.take_restarts(COMPONENT) {
            if let Some(r) = running.remove(&key) {
                let _ = r.stop.send(true);
            }
        }
        if !here && !running.is_empty() {
            // No longer the leader: the new one runs them. Each worker ends, then its report
            // goes (it keeps it itself while its parameter is unchanged).
            tracing::info!("shovels: this node no longer leads the cluster; its {} shovels stop here", running.len());
            for (key, r) in running.drain() {
                let _ = r.stop.send(true);
                let mut task = r.task;
                if tokio::time::timeout(STOP_WAIT, &mut task).await.is_err() {
                    task.abort();
                }
                broker.set_run_state(COMPONENT, &key.0, &key.1, None);
            }
        }
        running.retain(|key, r| {
            let keep = wanted.get(key).is_some_and(|p| *p == r.parameter);
            if !keep {
                let _ = r.stop.send(true);
            }
            keep
        });
        for (key, p) in wanted {
            if running.contains_key(&key) {
                continue;
            }
            let def = match definition::validate(&p.name, &p.value) {
                Ok(d) => d,
                Err(e) => {
                    // Checked when set; one read back from an older journal may not pass.
                    tracing::error!("shovel '{}' in vhost '{}' cannot run: {e}", p.name, p.vhost);
                    continue;
                }
            };
            let (stop, stopped) = watch::channel(false);
            let w = worker::Worker {
                vhost: p.vhost.clone(),
                name: p.name.clone(),
                def,
                owner: p.user.clone(),
                value: p.value.clone(),
                local,
                broker: broker.clone(),
            };
            tracing::info!("shovel '{}' in vhost '{}': starting", p.name, p.vhost);
            let task = tokio::spawn(w.run(stopped));
            running.insert(key, Running { parameter: p, stop, task });
        }
        if broker.quorum_host().is_some() {
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { break },
                _ = tokio::time::sleep(LEADERSHIP_CHECK) => {}
            }
        } else if changes.changed().await.is_err() {
            break;
        }
    }
}
