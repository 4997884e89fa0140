//! The vhost's side of delayed-message exchanges (see `broker::exchange::delayed`): each has a
//! holding queue (`broker::queue::delayed`), made when the exchange is declared or recovered
//! and deleted with it; held messages are routed back through the exchange when due.

use super::route::Via;
use super::{Topology, VHost};
use crate::broker::exchange::delayed::swap_delay;
use crate::broker::message::{header_routes, Message};
use crate::broker::queue::delayed::DelayStore;
use crate::broker::queue::Queue;
use crate::broker::store::StoreError;
use crate::types::{BasicProperties, ShortStr};
use sha2::Digest;
use std::sync::Arc;

/// The log id of a durable delayed exchange's held messages: made from the vhost and the
/// exchange's name, so the exchange finds its log again at start without the definitions
/// naming it.
fn log_id(vhost: &str, exchange: &str) -> String {
    let digest = sha2::Sha256::new().chain_update(vhost).chain_update([0u8]).chain_update(exchange).finalize();
    let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    format!("delayed-{hex}")
}

impl VHost {
    /// The holding queue of delayed exchange `exchange`. A durable one (`saved`) keeps its
    /// messages in a log: a new exchange (`fresh`) starts it empty, a recovered one reads it.
    pub(super) fn delay_holder(&self, exchange: &ShortStr, saved: bool, fresh: bool) -> Result<Arc<Queue>, StoreError> {
        let log = match (&self.storage, saved) {
            (Some(storage), true) => {
                let id = log_id(&self.name, exchange);
                Some((storage.delayed_log(&id, fresh)?, id))
            }
            _ => None,
        };
        let store = DelayStore::new(exchange.clone(), log, self.storage.clone());
        if !store.is_empty() {
            tracing::info!("delayed exchange '{exchange}' in vhost '{}': {} messages held", self.name, store.len());
        }
        Ok(Queue::delay_holder(&self.name, store, self.me.clone(), saved))
    }

    /// Acks what the delayed exchanges released and is on disk now (see
    /// [`crate::broker::Broker::settle_delayed`]).
    pub fn settle_delayed(&self) {
        let holders: Vec<Arc<Queue>> = self.topology.read().delayed.values().cloned().collect();
        for d in holders.iter().filter_map(|q| q.delayed.as_ref()) {
            d.settle_durable();
        }
    }

    /// The log ids of the durable delayed exchanges' held messages.
    pub(super) fn delayed_log_ids(topo: &Topology) -> impl Iterator<Item = String> + '_ {
        topo.delayed.values().filter_map(|q| q.delayed.as_ref()?.log_id.clone())
    }

    /// A held message, due: as it goes out (its `x-delay` header negative), and the queues it
    /// reaches through `exchange` now, into `out`.
    pub(super) fn release(&self, exchange: &str, message: &Message, out: &mut Vec<Arc<Queue>>) -> Arc<Message> {
        // Decoded once, for the header swap and the keys of CC.
        let mut properties = message.properties.clone();
        let mut cc = Vec::new();
        if let Ok(mut props) = BasicProperties::decode(message.properties.clone()) {
            if let Some(headers) = props.headers.as_mut() {
                cc = header_routes(headers).unwrap_or_default();
                if swap_delay(headers) {
                    properties = props.to_bytes();
                }
            }
        }
        let (rk, via) = (&message.routing_key, Via::Released);
        if let Err(e) = self.route_with(exchange, rk, &cc, &properties, out, via) {
            tracing::debug!("delayed exchange '{exchange}': message dropped when due: {}", e.text);
        }
        Arc::new(Message {
            exchange: message.exchange.clone(),
            routing_key: message.routing_key.clone(),
            properties,
            body: message.body.clone(),
            persistent: message.persistent,
            priority: message.priority,
            expiration: message.expiration,
        })
    }
}
