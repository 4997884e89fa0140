//! Direct exchange: routing key equals binding key.

use super::{Binding, Destination, Router};
use crate::broker::FastMap;
use crate::types::{FieldTable, ShortStr};

#[derive(Debug, Default)]
pub struct DirectRouter {
    by_key: FastMap<ShortStr, Vec<Destination>>,
}

impl Router for DirectRouter {
    fn bind(&mut self, b: &Binding) {
        let dests = self.by_key.entry(b.routing_key.clone()).or_default();
        if !dests.contains(&b.destination) {
            dests.push(b.destination.clone());
        }
    }
    fn unbind(&mut self, b: &Binding) {
        if let Some(dests) = self.by_key.get_mut(b.routing_key.as_str()) {
            dests.retain(|d| d != &b.destination);
            if dests.is_empty() {
                self.by_key.remove(b.routing_key.as_str());
            }
        }
    }
    fn route(&self, routing_key: &str, _headers: Option<&FieldTable>, out: &mut Vec<Destination>) {
        if let Some(dests) = self.by_key.get(routing_key) {
            out.extend(dests.iter().cloned());
        }
    }
}
