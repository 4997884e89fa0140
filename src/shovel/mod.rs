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
}

async fn supervise(broker: Arc<Broker>, local: SocketAddr) {
    let mut changes = broker.parameter_changes();
    let mut running: HashMap<(String, String), Running> = HashMap::new();
    loop {
        let wanted: HashMap<(String, String), Parameter> = broker
            .parameters(Some(COMPONENT), None)
            .into_iter()
            .map(|p| ((p.vhost.clone(), p.name.clone()), p))
            .collect();
        // Gone, changed or asked to restart: stopped (started again below if still wanted).
        for key in broker.take_restarts(COMPONENT) {
            if let Some(r) = running.remove(&key) {
                let _ = r.stop.send(true);
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
            tokio::spawn(w.run(stopped));
            running.insert(key, Running { parameter: p, stop });
        }
        if changes.changed().await.is_err() {
            break;
        }
    }
}
