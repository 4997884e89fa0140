//! Super streams (RabbitMQ 3.13's commands): a partitioned stream, one stream per partition,
//! bound to a direct exchange named after the super stream, each binding keyed by its
//! routing key and ordered by `x-stream-partition-order`. Publishers ask `route` which
//! partition a routing key goes to, consumers ask `partitions` for them all, in order.

use super::{code, Conn};
use crate::auth::grant::{Kind, Perm};
use crate::broker::exchange::{Binding, Destination};
use crate::types::{FieldTable, FieldValue, ShortStr};

/// The binding argument that orders a super stream's partitions.
const ORDER: &str = "x-stream-partition-order";

impl Conn {
    /// RabbitMQ's check_super_stream_management_permitted: configure on the exchange and
    /// the partitions, read on the exchange, write on the partitions.
    fn super_stream_permitted(&self, name: &str, partitions: &[String]) -> bool {
        let Some(g) = &self.grant else { return false };
        g.check(Kind::Exchange, name, Perm::Configure).is_ok()
            && partitions.iter().all(|p| g.check(Kind::Queue, p, Perm::Configure).is_ok())
            && g.check(Kind::Exchange, name, Perm::Read).is_ok()
            && partitions.iter().all(|p| g.check(Kind::Queue, p, Perm::Write).is_ok())
    }

    /// Creates the exchange, the partitions and their bindings; on a failure midway what
    /// was created is removed again, as RabbitMQ rolls back.
    pub(super) fn create_super_stream(
        &mut self,
        name: &str,
        partitions: &[String],
        binding_keys: &[String],
        arguments: &[(String, String)],
    ) -> u16 {
        let name = name.replace(['\n', '\r'], "");
        if name.is_empty() || name.starts_with("amq.") || name.len() > 255 {
            return code::PRECONDITION_FAILED;
        }
        if !self.super_stream_permitted(&name, partitions) {
            return code::ACCESS_REFUSED;
        }
        let Some(vhost) = self.vhost.clone() else { return code::INTERNAL_ERROR };
        // validate_super_stream_creation's order.
        let mut seen = std::collections::HashSet::new();
        let bad_name = |p: &String| p.is_empty() || p.starts_with("amq.") || p.len() > 255;
        if partitions.len() != binding_keys.len()
            || partitions.is_empty()
            || !partitions.iter().all(|p| seen.insert(p.as_str()))
            || partitions.iter().any(bad_name)
        {
            return code::PRECONDITION_FAILED;
        }
        if vhost.exchange_kind(&name).is_some() || partitions.iter().any(|p| vhost.has_queue(p)) {
            return code::STREAM_ALREADY_EXISTS;
        }
        let actor = self.actor();
        let mut args = FieldTable::new();
        args.insert("x-super-stream", FieldValue::Bool(true));
        let exchange = ShortStr::from(name.clone());
        if vhost.declare_exchange(&exchange, "direct", false, true, false, false, &args, &actor).is_err() {
            return code::INTERNAL_ERROR;
        }
        let mut created = Vec::new();
        for (order, (partition, key)) in partitions.iter().zip(binding_keys).enumerate() {
            let c = self.create(partition, arguments);
            if c != code::OK {
                self.roll_back(&name, &created);
                return c;
            }
            created.push(partition.clone());
            let mut binding_args = FieldTable::new();
            binding_args.insert(ORDER, FieldValue::I64(order as i64));
            let binding = Binding {
                destination: Destination::Queue(partition.as_str().into()),
                routing_key: key.as_str().into(),
                arguments: binding_args,
            };
            if vhost.bind(&exchange, binding, &actor).is_err() {
                self.roll_back(&name, &created);
                return code::INTERNAL_ERROR;
            }
        }
        code::OK
    }

    fn roll_back(&mut self, name: &str, created: &[String]) {
        let Some(vhost) = self.vhost.clone() else { return };
        for p in created {
            self.delete(p);
        }
        let _ = vhost.delete_exchange(&ShortStr::from(name), false, &self.actor());
    }

    /// Deletes the exchange and its partitions; this connection's publishers and
    /// subscriptions on them go, with a metadata update each.
    pub(super) fn delete_super_stream(&mut self, name: &str) -> u16 {
        let partitions = self.partitions(name).unwrap_or_default();
        if !self.super_stream_permitted(name, &partitions) {
            return code::ACCESS_REFUSED;
        }
        let Some(vhost) = self.vhost.clone() else { return code::INTERNAL_ERROR };
        if vhost.exchange_kind(name).is_none() {
            return code::STREAM_DOES_NOT_EXIST;
        }
        if let Err(e) = vhost.delete_exchange(&ShortStr::from(name), false, &self.actor()) {
            tracing::warn!("super stream '{name}': its exchange: {}", e.text);
        }
        for p in &partitions {
            if self.delete(p) == code::OK {
                self.stream_gone(p);
            }
        }
        code::OK
    }

    /// The partitions of a super stream, in their order; None if there is no such exchange.
    pub(super) fn partitions(&self, name: &str) -> Option<Vec<String>> {
        let vhost = self.vhost.as_ref()?;
        let mut bindings: Vec<Binding> = vhost
            .exchange_bindings(name)?
            .into_iter()
            .filter(|b| matches!(&b.destination, Destination::Queue(q) if self.stream(q).is_some()))
            .collect();
        // Bindings without an order go last, as RabbitMQ's sort_partitions puts them.
        bindings.sort_by_key(|b| b.arguments.get(ORDER).and_then(FieldValue::as_i64).unwrap_or(i64::MAX));
        Some(bindings.into_iter().map(|b| b.destination.name().to_string()).collect())
    }

    /// The partitions a routing key goes to (the direct exchange's exact match); None if
    /// there is no such super stream.
    pub(super) fn route(&self, routing_key: &str, name: &str) -> Option<Vec<String>> {
        let vhost = self.vhost.as_ref()?;
        let streams = vhost
            .exchange_bindings(name)?
            .into_iter()
            .filter(|b| b.routing_key.as_str() == routing_key)
            .filter_map(|b| match &b.destination {
                Destination::Queue(q) if self.stream(q).is_some() => Some(q.to_string()),
                _ => None,
            })
            .collect();
        Some(streams)
    }
}
